"""The 3D pipeline: carry a prior visit's segments onto a follow-up volume.

:func:`~.pipeline.propagate` (in :mod:`.pipeline`, with its parameters in :mod:`.config` and its
result in :mod:`.results`) runs the stages in this order:

1. :mod:`.registration` -- rigid, then deformable registration per structure (transforms and mask
   warping: :mod:`.geometry`); :mod:`.regcheck` checks each rigid result (plausibility, field of view);
2. :mod:`.structures` -- a structure split into parts (pieces; a ring's outer region and cavity);
3. :mod:`.scale` -- what the model sees of each slice (whole slice or a window);
   :mod:`.slices` -- reference slices, then P²SAM's proposal on every follow-up slice;
4. :mod:`.decide` -- per slice, the model's contour or the registered one;
5. :mod:`.cleanup3d` -- 3D components and holes;
6. :mod:`.report` -- the QA report and the overlay montage.

:mod:`.series` runs :func:`~.pipeline.propagate` over several follow-ups (a treatment course).
This layer uses :mod:`P2SAMLogic.method`, :mod:`P2SAMLogic.models` and :mod:`P2SAMLogic.io`, never
the front-ends.
"""
