"""A test-only switch: run the suite with LiteMedSAM's weights replaced by random ones.

``P2SAM_TEST_RANDOM_WEIGHTS=1`` (any non-empty value other than ``0``) makes every LiteMedSAM that this
process builds - through :func:`P2SAMLogic.models.load_model`, the CLI, the cohort runner or the
server - load the real weights file strictly, as always, and then overwrite every parameter and
buffer with a freshly initialised network drawn with a fixed seed (``P2SAM_TEST_RANDOM_SEED``,
default 0). The architecture, the preprocessing, the checksum and every code path stay the same;
only what the network has learnt is gone. A test that claims to measure the model's accuracy must
fail under this switch (docs/testing.md lists them); a test of mechanics may pass.

:func:`install` is called by ``conftest.py`` for the test process and by
``random_weights_site/sitecustomize.py`` for the subprocesses the tests start (the server), which
``conftest.py`` puts on their ``PYTHONPATH``. It is not a product feature: nothing under
P2SAMLogic reads these variables.
"""
from __future__ import annotations

import os

ENV = "P2SAM_TEST_RANDOM_WEIGHTS"
SEED_ENV = "P2SAM_TEST_RANDOM_SEED"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "random_weights_site")


def requested() -> bool:
    """Whether the environment asks for random weights."""
    return os.environ.get(ENV, "") not in ("", "0")


def install() -> bool:
    """Patch the LiteMedSAM loader of this process (idempotent); returns whether it was patched."""
    if not requested():
        return False
    import torch

    from P2SAMLogic.models import checkpoint, litemedsam

    if getattr(litemedsam, "_random_weights_installed", False):
        return True
    real_load_strict = litemedsam.load_strict
    seed = int(os.environ.get(SEED_ENV, "0"))

    def load_then_randomise(net, state, path, expected):
        real_load_strict(net, state, path, expected)  # the real file must still load strictly
        saved = torch.random.get_rng_state()  # the tests' own random draws are not disturbed
        try:
            torch.manual_seed(seed)
            fresh = litemedsam.build_litemedsam_network(init=True)
        finally:
            torch.random.set_rng_state(saved)
        net.load_state_dict(fresh.state_dict(), strict=True)

    litemedsam.load_strict = load_then_randomise
    litemedsam._random_weights_installed = True
    checkpoint.clear_network_cache()  # nothing built before the patch survives
    return True
