"""Character recognition from face crops (seed 003): hand-made and CNN
features with classical classifiers (classical.py), face cropping
(crop_faces.py); fine-tuning runs through configs/characters_resnet.py."""
