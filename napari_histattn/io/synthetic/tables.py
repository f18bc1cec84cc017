"""The synthetic renderer's tables: stain vectors, nuclear classes and tuned constants.

Each constant says what it matches; :mod:`.render` draws with them. Sizes are in
micrometres, so a slide scales with its mpp. See :mod:`.render` for the
appearance model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_histattn.io.synthetic.scene import Scene

# Stain optical-density directions (unit vectors, RGB). Eosin gives pink, hematoxylin
# blue-purple; close to Ruifrok & Johnston's, shifted for a typical modern H&E look.
E_VEC = np.array([0.10, 0.86, 0.50], dtype=np.float32)
E_VEC /= np.linalg.norm(E_VEC)
H_VEC = np.array([0.62, 0.74, 0.26], dtype=np.float32)
H_VEC /= np.linalg.norm(H_VEC)

BACKGROUND = 243  # glass, grey level of every channel outside the tissue
_BG_OD = np.float32(-np.log(BACKGROUND / 255.0))

_P = 1024  # period of the fine texture tables, px
_N_ORIENT = 4  # fibre orientations in the tables: 0, 45, 90, 135 degrees
# Above this downsample, nuclei are rendered by their expected contribution
# instead of individually (thumbnails of huge slides).
_EXACT_NUCLEI_MAX_DS = 24.0


@dataclass(frozen=True)
class NucleusClass:
    """Parameters of one nuclear population (lengths in micrometres)."""

    name: str
    stream: int  # hash stream base: distinct per class
    grid_um: float  # one candidate nucleus per grid cell
    keep: float  # probability that a candidate exists (density)
    jitter: float  # position jitter as a fraction of the grid cell
    radius_um: tuple[float, float]  # long semi-axis range
    aspect: tuple[float, float]  # short / long semi-axis range
    harmonics: tuple[float, float]  # outline irregularity amplitude range (modes 2-5)
    od: tuple[float, float]  # hematoxylin optical density range
    chromatin: float  # amplitude of the chromatin texture
    coarse: bool  # coarse clumped chromatin (lesion) instead of fine (benign)
    rim: float  # membrane accentuation
    nucleolus: float  # probability of a visible nucleolus
    align: bool  # long axis follows the fibre orientation
    # Clumped class: each site fills the area of one drawn nucleus (radius_um, aspect)
    # with 1-5 small round cells of this radius range, in a ring.
    clump_um: tuple[float, float] | None = None

    def scaled(self, size: float, od: float, keep: float) -> NucleusClass:
        return replace(
            self,
            radius_um=(self.radius_um[0] * size, self.radius_um[1] * size),
            od=(self.od[0] * od, self.od[1] * od),
            keep=min(1.0, self.keep * keep),
        )


NORMAL = NucleusClass(
    name="normal",
    stream=100,
    grid_um=15.0,
    keep=0.55,
    jitter=0.8,
    radius_um=(2.6, 3.8),
    aspect=(0.3, 0.75),
    harmonics=(0.0, 0.04),
    od=(0.9, 1.35),
    chromatin=0.18,
    coarse=False,
    rim=0.1,
    nucleolus=0.0,
    align=True,
)
LESION = NucleusClass(
    name="lesion",
    stream=200,
    grid_um=11.5,
    keep=0.9,
    jitter=0.45,
    radius_um=(4.2, 6.6),
    aspect=(0.55, 0.95),
    harmonics=(0.06, 0.2),
    od=(0.75, 1.5),
    chromatin=0.75,
    coarse=True,
    rim=0.55,
    nucleolus=0.6,
    align=False,
)
# The constants of the look-alike below were tuned by measurement, not derived (lesion
# nuclei overlap and saturate, clumps do not): lesion vs look-alike mean colour within
# 2 grey levels, and power spectra of region interiors within 14 % in every band from
# 12 to 128 um wavelength, the scales an 8-16 um/px view can see.
_LYMPH_OD_GAIN = 1.22  # stain of a site: the lesion's times this
LYMPH = NucleusClass(
    name="lymph",
    stream=300,
    # Sites, site area and stain drawn as the lesion's, so that low resolution cannot tell
    # them apart; each site then becomes a clump (_draw_clumps).
    grid_um=LESION.grid_um,
    keep=LESION.keep,
    jitter=LESION.jitter,
    radius_um=LESION.radius_um,
    aspect=LESION.aspect,
    harmonics=(0.0, 0.025),
    od=(LESION.od[0] * _LYMPH_OD_GAIN, LESION.od[1] * _LYMPH_OD_GAIN),
    chromatin=0.12,
    coarse=False,
    rim=0.15,
    nucleolus=0.0,
    align=False,
    clump_um=(2.5, 3.1),
)
_CLUMP_MAX = 5  # cells per clump
_CLUMP_GAP_UM = 1.0  # gap between neighbouring cells of a clump (they stay separable)
_CLUMP_ASPECT = (0.86, 1.0)
# Ring size: at 0.5 the clump's ink spreads as far as the nucleus' would (second moment
# about the site); 0.6 matches the spectrum at 12-32 um wavelengths.
_CLUMP_SPREAD = 0.6
# Extra site-to-site stain variation (uniform, relative): saturation in the dark small
# cells compresses the variation of a site's ink, which sets the power at 32-128 um.
_CLUMP_OD_SPREAD = 0.9
_HYPERCHROMATIC = (1.22, 1.3, 1.15)  # size, od, density factors of the diffuse variant

# Eosin optical density of stroma (before fibre texture) and of the cellular
# background (cytoplasm) inside lesions and look-alikes; the cytoplasm is denser than
# stroma so that a region of either kind stands out from the stroma by ~25 grey levels.
_STROMA_OD = 0.50
_CELL_OD = 0.48
# Fade of region density at the outline, as a fraction of the normalised radius.
_EDGE_FADE = 0.15


def nucleus_classes(scene: Scene) -> tuple[NucleusClass, NucleusClass, NucleusClass]:
    """``(normal, lesion, lymph)`` classes for a scene (with its diffuse variant applied)."""
    normal = NORMAL
    if scene.diffuse == "hyperchromatic":
        normal = NORMAL.scaled(*_HYPERCHROMATIC)
    return normal, LESION, LYMPH
