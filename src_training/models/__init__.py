"""Multi-rater segmentation models behind one interface (:class:`MultiRaterModel`)."""

from .base import Capabilities, MultiRaterModel
from .dpersona import DPersona, dpersona_stage2_from_stage1
from .pionono import PiononoModel
from .prob_unet import ProbUNet
from .proseg import ProSeg
from .registry import METHODS, build_model, default_config
from .umanet import UMANet
from .unet import UNetModel

__all__ = [
    "Capabilities",
    "MultiRaterModel",
    "METHODS",
    "build_model",
    "default_config",
    "dpersona_stage2_from_stage1",
    "UNetModel",
    "ProbUNet",
    "DPersona",
    "ProSeg",
    "UMANet",
    "PiononoModel",
]
