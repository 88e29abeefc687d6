"""Models: the backbone registry behind ``create_model``, CoAtNet, and Grad-CAM.

Owns every backbone (``registry``: names, preprocessing, the shipped PCam
backbone, the classification head, freezing), ``coatnet`` and ``gradcam``
(Grad-CAM splits a model at its backbone's last convolution, which only the
registry knows). May import the ground modules and ``pcam.data`` (the
colour/stain layer is a pipeline op registered for loading); never training,
prediction or reports.
"""
