"""Keras: preprocessing shared by training and serving, the tf.data input pipeline, the backbones,
repeatable arithmetic, the serving graph, loading a trained model and the model card."""
