"""Hospital edge appliance core: model loading, layer selection, notes, training, evaluation."""
