"""refbnn: the executable specification of binary-neural-network training and inference."""
__version__ = "0.1.0"
