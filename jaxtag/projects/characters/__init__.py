"""Character recognition from face crops (Guan & Ge): hand-made and CNN
features with classical classifiers (classical.py), face cropping
(crop_faces.py); fine-tuning runs through configs/characters_resnet.py."""
