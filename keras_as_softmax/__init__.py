"""keras-as-softmax: Adaptive Sparse Softmax (AS-Softmax) for Keras 3."""

from keras_as_softmax.as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax.as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax.as_softmax import as_softmax_crossentropy
from keras_as_softmax.as_softmax import as_softmax_mask
from keras_as_softmax.as_softmax import sparse_as_softmax_crossentropy
from keras_as_softmax.as_softmax import sparse_as_softmax_mask
from keras_as_softmax.as_speed import AdaptiveModel
from keras_as_softmax.as_speed import AdaptiveSequential
from keras_as_softmax.baselines import Entmax15Loss
from keras_as_softmax.baselines import SparsemaxLoss
from keras_as_softmax.baselines import TopKSoftmaxCrossentropy
from keras_as_softmax.baselines import entmax15_loss
from keras_as_softmax.baselines import sparsemax_loss
from keras_as_softmax.baselines import top_k_softmax_crossentropy
from keras_as_softmax.existing_models import adaptive
from keras_as_softmax.fused_projection import fuse_output_projection
from keras_as_softmax.linear_as_softmax import LinearSparseASSoftmaxCrossentropy
from keras_as_softmax.linear_as_softmax import linear_sparse_as_softmax_crossentropy
from keras_as_softmax.multilabel import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax.multilabel import multilabel_as_softmax_crossentropy
from keras_as_softmax.multilabel import multilabel_as_softmax_mask
from keras_as_softmax.pruning import PrunableDataset
from keras_as_softmax.pruning import PruneMasked
from keras_as_softmax.saving import load_model
from keras_as_softmax.warmup import DeltaWarmup

__all__ = [
    "ASSoftmaxCrossentropy",
    "AdaptiveModel",
    "AdaptiveSequential",
    "DeltaWarmup",
    "Entmax15Loss",
    "LinearSparseASSoftmaxCrossentropy",
    "MultiLabelASSoftmaxCrossentropy",
    "PrunableDataset",
    "PruneMasked",
    "SparseASSoftmaxCrossentropy",
    "SparsemaxLoss",
    "TopKSoftmaxCrossentropy",
    "adaptive",
    "as_softmax_crossentropy",
    "as_softmax_mask",
    "entmax15_loss",
    "fuse_output_projection",
    "linear_sparse_as_softmax_crossentropy",
    "load_model",
    "multilabel_as_softmax_crossentropy",
    "multilabel_as_softmax_mask",
    "sparse_as_softmax_crossentropy",
    "sparse_as_softmax_mask",
    "sparsemax_loss",
    "top_k_softmax_crossentropy",
]

__version__ = "0.1.0"
