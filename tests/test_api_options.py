"""Bad caption options given to the Python API are a one-line BadInputError before any work."""

from __future__ import annotations

import pytest

from conftest import SAMPLE_CLIP
from streamcap.errors import BadInputError
from streamcap.runner import run


class NeverCalled:
    name = "never"

    def __call__(self, frame):
        raise AssertionError("the run must not start")


@pytest.mark.parametrize("caption", [{"interval": -1}, {"interval": "2"}, {"every": 0}, {"every": 1.5}])
def test_bad_caption_schedule_is_bad_input(caption):
    with pytest.raises(BadInputError, match="caption (every|interval)"):
        run(str(SAMPLE_CLIP), segment=False, caption=caption, captioner=NeverCalled())
