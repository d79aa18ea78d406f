"""How photographic an image looks, by CLIP zero-shot: photo against several artwork styles.

Used by the face filter on face crops: a realistic face of a real person is what a deepfake
needs; a cartoon face is not. Each class is a prompt ensemble (phrasings averaged and
renormalised, open_clip's zero-shot classifier pattern). The artwork styles stay separate
classes rather than one averaged "art" embedding, because a drawing and a 3D render lie far
apart in CLIP space and their mean resembles neither. The photo probability is the softmax
share of the photo class among all classes, at CLIP's own logit scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from safety.clip import Concept, ImageTextEncoder, concept_embeddings

PHOTO = Concept(
    "photo",
    (
        "a photo of a person",
        "a photograph of a real face",
        "a candid snapshot of a person",
        "a close-up photo of a human face",
        "a realistic portrait photograph",
    ),
)

ARTWORK = (
    Concept("drawing", ("a drawing", "a pencil sketch of a face")),
    Concept("painting", ("a painting", "an oil painting of a face")),
    Concept("cartoon", ("a cartoon", "a cartoon character")),
    Concept("render", ("a 3d render", "a CGI character")),
    Concept("anime", ("anime", "an anime character")),
)


class ClipRealism:
    """Photo-versus-artwork probability per image.

    Args:
        encoder: the CLIP to embed with (a :class:`~safety.clip.ClipEncoder`, or a fake in tests).
        photo: the photographic class.
        artwork: the non-photographic classes; at least one.
    """

    def __init__(
        self,
        encoder: ImageTextEncoder,
        *,
        photo: Concept = PHOTO,
        artwork: Sequence[Concept] = ARTWORK,
    ) -> None:
        if not artwork:
            raise ValueError("realism needs at least one artwork class to compare photos against")
        self._encoder = encoder
        self._classes = concept_embeddings(encoder, [photo, *artwork])  # row 0 is the photo class

    @property
    def version(self) -> str:
        """The CLIP model behind the probabilities."""
        return self._encoder.version

    def photo_probability(self, images: Sequence[Image.Image]) -> list[float]:
        """The probability that each image is a photograph rather than artwork; one batch."""
        if not images:
            return []
        embedded = np.asarray(self._encoder.encode_images(images), dtype=np.float64)
        logits = self._encoder.logit_scale * (embedded @ np.asarray(self._classes, dtype=np.float64).T)
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        weights = np.exp(logits)
        return [float(p) for p in weights[:, 0] / weights.sum(axis=1)]
