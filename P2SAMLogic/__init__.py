"""P2SAMLogic: part-aware personalised prompting of Segment-Anything models (P²SAM).

Pure Python; never imports Slicer, Qt or VTK.
"""
__version__ = "0.1.0"
