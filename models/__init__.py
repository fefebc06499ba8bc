"""The TensorFlow two-tower model: towers, training, evaluation, export, feed publication."""
