"""Step 4 -- a first training run.

`refbnn train` is TrainConfig + train(): here a BNN (sign weights with the identity STE, sign
activations with the clipped STE) on the embedded 8x8 digits, a few epochs, no files written.
The loop is plain: for each batch, forward through every layer, the loss, backward through every
layer in reverse, one optimizer step, then the latent weights are clipped to [-1, 1] (BinaryConnect's
projection). Read refbnn/train.py for the loop itself.
"""
from refbnn.train import TrainConfig, train

metrics = train(TrainConfig(method="bnn", epochs=5, progress=False, seed=0), log=print)
print(f"test accuracy after 5 epochs: {100 * metrics['test_accuracy']:.2f} %")
assert metrics["test_accuracy"] > 0.8, "a BNN on digits should pass 80 % within 5 epochs"
print("step 4 ok")
