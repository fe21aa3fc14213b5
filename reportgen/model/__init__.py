"""The model room: loading a model, its checkpoints, hooks, layers, outputs, classes, images and tensor layouts."""
