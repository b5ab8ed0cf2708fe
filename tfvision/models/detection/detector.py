"""`Detector`: what every tfvision detector shares: raw head outputs in training, final detections in predict.

A detector is a functional `network` (float32 images `[B, H, W, 3]` in 0..255 -> a dict of raw, batch-major
head outputs) wrapped in a thin `keras.Model` subclass per family, as DESIGN.md asks:

- `model(images)` / `call` returns the raw outputs, so `model.fit` trains on `(images, targets)` pairs with the
  family's loss in `compute_loss` (targets come from the family's `tf.data` target encoder);
- `model.predict(images)` / `detect(images)` returns final detections: the family's `decode_predictions`
  turns raw outputs into boxes and per-class probabilities, and a `DetectionDecoder` runs NMS in the graph.

A family subclass implements `decode_predictions(raw)` and `losses(targets, raw)`, and adds its own
constructor arguments to `get_config`. Loss terms other than the total appear in the training logs.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfvision.layers.detection_decoder import DetectionDecoder


class Detector(keras.Model):
    """Base class of the detectors.

    Args:
        network: functional `keras.Model`, images -> dict of raw outputs.
        decoder: a `DetectionDecoder` (NMS settings).
        image_size: `(height, width)` the network takes; images must have this size.
        loss_names: the keys of `losses()` besides "loss", logged as metrics.
    """

    loss_names: tuple[str, ...] = ()
    # True for families whose `detect` also returns `masks` [B, K, M, M] over each box (Mask R-CNN).
    predicts_masks: bool = False

    def __init__(self, network: keras.Model, decoder: DetectionDecoder, image_size, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.decoder = decoder
        self.image_size = tuple(int(s) for s in image_size)
        self.built = True  # the network arrives built (checkpoint callbacks and count_params need this)
        # Metric attributes are tracked by Keras, so these appear in `model.metrics` and the training logs.
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    # --- what a family defines ---

    def decode_predictions(self, raw: dict):
        """Raw outputs -> (boxes float32 `[B, N, 4]` yxyx pixels of the network input, or deltas when
        `anchors()` is not None; scores float32 `[B, N, C]` foreground class probabilities)."""
        raise NotImplementedError

    def anchors(self):
        """float32 `[N, 4]` yxyx pixel anchors the decoded deltas refer to, or None if boxes come decoded."""
        return None

    def losses_from(self, targets: dict, raw: dict) -> dict:
        """{"loss": total, plus each of `loss_names`} float32 scalars for one replica's batch."""
        raise NotImplementedError

    # --- shared ---

    def call(self, images, training=False):
        return self.network(images, training=training)

    def build(self, input_shape=None):
        # The network is built when assembled; nothing to create here (lets `.keras` loading restore weights).
        self.built = True

    def detect(self, images) -> dict:
        """Final detections for float32 images `[B, H, W, 3]` (0..255) at `image_size`.

        Returns:
            `boxes` float32 `[B, K, 4]` yxyx pixels of the input, `scores` `[B, K]`, `classes` int32 `[B, K]`
            (1..C, -1 = padding), `num_detections` int32 `[B]`.
        """
        raw = self(images, training=False)
        boxes, scores = self.decode_predictions(raw)
        return self.decoder(boxes, scores, anchors=self.anchors(), image_size=self.image_size)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.detect(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError(
                f"{type(self).__name__}.fit needs (images, targets) pairs from the task's target encoder "
                "(tfvision.tasks.detection.datasets); got no targets."
            )
        losses = self.losses_from(y, y_pred)
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        return _scale_for_replicas(losses["loss"])

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def _scale_for_replicas(loss):
    """Divides a replica's loss by the replica count, as Keras' compiled losses do, so that the summed
    gradients under `tf.distribute` are those of the global mean (and the logged loss is unscaled back)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / tf.cast(replicas, loss.dtype) if replicas > 1 else loss
