"""Shared utilities: image validation (the data contract)."""

from ._validation import (
    check_image_shape,
    check_images,
    check_size_pair,
    restore_layout,
    validate_images,
)

__all__ = [
    "check_image_shape",
    "check_images",
    "check_size_pair",
    "restore_layout",
    "validate_images",
]
