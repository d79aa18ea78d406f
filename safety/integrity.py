"""The integrity stage: the image is what was asked for, and not a degenerate output.

A pipeline whose numbers overflow (fp16 NaNs, a broken VAE) returns black or flat images; posting
those helps nobody, and a wrong size or mode means something upstream is broken. Cheap enough to
run on every image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from safety.policy import CheckContext
from safety.verdict import Decision, Verdict

# Below this standard deviation (on 0..255) an image is one flat colour.
FLAT_STD = 1.0


class IntegrityStage:
    """Blocks images of the wrong size or mode, and flat (blank) images."""

    name = "integrity"
    version = "1"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        return [self._check_one(image, context) for image in images]

    def _check_one(self, image: Image.Image, context: CheckContext) -> Verdict:
        versions = {self.name: self.version}
        if image.mode != "RGB" or image.size != (context.width, context.height):
            return Verdict(
                Decision.BLOCK,
                self.name,
                "the generator returned a malformed image",
                category="malformed",
                model_versions=versions,
            )
        std = float(np.asarray(image, dtype=np.float32).std())
        scores = {f"{self.name}.std": round(std, 4)}
        if std < FLAT_STD:
            return Verdict(
                Decision.BLOCK,
                self.name,
                "the model produced a blank image",
                category="blank",
                scores=scores,
                model_versions=versions,
            )
        return Verdict(Decision.ALLOW, self.name, "image is well formed", scores=scores, model_versions=versions)
