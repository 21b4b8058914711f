"""MaskMed: decoupled mask and class prediction for 3D medical image segmentation.

Importing this package is light: it needs only torch and numpy. SimpleITK is imported by the I/O code
that needs it, so the model and the op run on a bare GPU machine.
"""

__version__ = "0.1.0"
