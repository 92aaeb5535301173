"""The TensorFlow side of jacengine: model loading, causality detection, block computation.

This is the only package that imports TensorFlow; the rest of jacengine stays framework-neutral.
"""
