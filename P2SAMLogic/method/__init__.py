"""The 2D method, P²SAM on one image: a reference image and mask in, a mask on a target image out.

:class:`~.segmenter.P2SAMSegmenter` (:mod:`.segmenter`) composes the method's steps, one module each:

1. :mod:`.reference` -- the reference encoded once, its masked features pooled and clustered into
   parts (:mod:`.parts`: k-means++), the background's into negative parts;
2. :mod:`.prompts` -- the parts matched on the target (:mod:`.matching`): positive points, box
   centres, negative points;
3. :mod:`.decoding` -- the decoder on each candidate's prompts (boxes on grid regions,
   :mod:`.boxes`; the point cascade), refinements, the crop pass;
4. :mod:`.scoring` -- each candidate's Wasserstein distances to the reference's features
   (:mod:`.retrieval`: exact EMD or batched Sinkhorn);
5. :mod:`.selection` -- the winner.

:mod:`.search` runs steps 2-5 for point-prompt and box-prompt models; :mod:`.config` holds the
parameters, :mod:`.results` what is kept and returned, :mod:`.roi` the search windows.
:mod:`.interactive` corrects one slice with clicks (the Segment Editor effect's engine).

Frames: images ``H x W x 3`` uint8 RGB, masks ``H x W`` bool; points ``(x, y)`` and boxes
``(x0, y0, x1, y1)`` in image pixels. This layer uses :mod:`P2SAMLogic.models` (and the intensity
windows of :mod:`P2SAMLogic.io`), never the 3D pipeline or the front-ends.
"""
