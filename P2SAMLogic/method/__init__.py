"""The 2D method, P²SAM on one image: a reference image and mask in, a mask on a target image out.

In the order a target is segmented:

* :mod:`.parts` -- the reference's masked features clustered into parts (k-means++), the
  background's into negative parts;
* :mod:`.matching` -- part prototypes matched on the target: similarity maps and their peaks;
* :mod:`.retrieval` -- the exact (or Sinkhorn) Wasserstein distance between feature sets that
  ranks the candidates;
* :mod:`.segmenter` -- :class:`~.segmenter.P2SAMSegmenter`, which composes the steps (reference
  preparation, prompt generation, candidate decoding, scoring, selection);
* :mod:`.roi` -- search windows around a structure;
* :mod:`.interactive` -- corrections of one slice with clicks (the Segment Editor effect's engine).

Frames: images ``H x W x 3`` uint8 RGB, masks ``H x W`` bool; points ``(x, y)`` and boxes
``(x0, y0, x1, y1)`` in image pixels. This layer uses :mod:`P2SAMLogic.models` (and the intensity
windows of :mod:`P2SAMLogic.io`), never the 3D pipeline or the front-ends.
"""
