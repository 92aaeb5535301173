"""The seed question, end to end: the gradient of output step 10 of an LSTM with respect to every
input step, then its sum over the first 10 input steps, checked against TensorFlow's own
``batch_jacobian`` (which fits in memory at this size, and no longer at (32, 500, 1)).

    python examples/seed_question.py [--batch 10] [--steps 100]
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import jacengine

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=10)
parser.add_argument("--steps", type=int, default=100)
arguments = parser.parse_args()

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((None, 1)), keras.layers.LSTM(32, return_sequences=True),
                          keras.layers.TimeDistributed(keras.layers.Dense(1))])
x = np.random.default_rng(0).normal(size=(arguments.batch, arguments.steps, 1)).astype("float32")

grads = jacengine.jacobian(model, x, t_out=10, budget="512MiB")  # (B, F_out, T, F_in): d y[:, 10] / d x
first_ten = grads[:, 0, :10, 0].sum(axis=1)  # the sum over input steps 0-9, per sample
print("d y[:, 10] / d x, summed over input steps 0-9:", np.round(first_ten, 4))
print("input steps after 10 never reach output step 10:", bool(np.all(grads[:, :, 11:] == 0)))

inputs = tf.constant(x)
with tf.GradientTape() as tape:  # the user's original way, at a size where it still fits
    tape.watch(inputs)
    outputs = model(inputs)
reference = tape.batch_jacobian(outputs, inputs).numpy()[:, 10]
difference = np.abs(grads - reference).max() / np.abs(reference).max()
print(f"largest difference from batch_jacobian: {difference:.1e} of max |J|")
assert difference < 1e-5
