"""cofre: fixed-point masked generative models (FP-MDLM, FP-MaskGIT) and the CoFRe recipe."""

__version__ = "0.1.0"
