"""Few-shot meta-learning: Omniglot / sinusoid data, batched task samplers, learners.

Every learner implements the interface of :class:`agents.fewshot.base.FewShotLearner`
(``meta_train_step``, ``evaluate``, ``state_dict``) and has one config dataclass
(``Learner.config_cls``). :data:`LEARNERS` maps the registered name (``metarl train NAME
omniglot``) to the learner class; :mod:`agents.fewshot.algorithms` wraps them for the runner.

Example:
    >>> import torch
    >>> from agents.fewshot import LEARNERS
    >>> from agents.fewshot.data import gaussian_cluster_images
    >>> from agents.fewshot.sampler import ClassificationSampler
    >>> sampler = ClassificationSampler(gaussian_cluster_images(10, image_size=16), 5, 1, 3)
    >>> cls = LEARNERS["protonet"]
    >>> learner = cls(cls.config_cls(hidden=8), 5, sampler.input_shape, "cpu")
    >>> g = torch.Generator().manual_seed(0)
    >>> stats = learner.meta_train_step(sampler.sample(4, g), g)
    >>> sorted(stats)
    ['accuracy', 'grad_norm', 'loss']
    >>> learner.evaluate(sampler.sample(2, g))[0].shape
    torch.Size([2])
"""

from agents.fewshot.base import FewShotLearner
from agents.fewshot.maml import MAML, MetaSGD
from agents.fewshot.matching import MatchingNet
from agents.fewshot.metanet import MetaNet
from agents.fewshot.protonet import ProtoNet
from agents.fewshot.reptile import Reptile
from agents.fewshot.snail import SNAILClassifier

LEARNERS: dict[str, type[FewShotLearner]] = {
    "maml": MAML,
    "meta-sgd": MetaSGD,
    "reptile": Reptile,
    "protonet": ProtoNet,
    "matchingnet": MatchingNet,
    "metanet": MetaNet,
    "snail": SNAILClassifier,
}

__all__ = [
    "LEARNERS",
    "MAML",
    "FewShotLearner",
    "MatchingNet",
    "MetaNet",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "SNAILClassifier",
]
