"""Import every study module so that each registers itself.

The order here is the order in which ``cnnlab lab`` runs them and the report
lists them. A study whose module is missing optional dependencies is skipped
with a logged reason rather than breaking the whole lab.
"""

import importlib
import logging

log = logging.getLogger(__name__)

STUDY_MODULES = [
    "cnnlab.lab.architecture",
    "cnnlab.lab.augmentation",
    "cnnlab.lab.gradients",
    "cnnlab.lab.downsampling",
    "cnnlab.lab.activations",
    "cnnlab.lab.robustness",
    "cnnlab.lab.explanations",
    "cnnlab.lab.transfer",
    "cnnlab.lab.defects",
    "cnnlab.lab.text",
    "cnnlab.lab.speech",
    "cnnlab.lab.tabular",
    "cnnlab.lab.segmentation",
]

for _name in STUDY_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as error:
        if error.name != _name:
            raise
        log.debug("study module %s is not present", _name)
