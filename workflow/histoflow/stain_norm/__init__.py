"""Stain normalisation of model input: Macenko's H&E stain vectors fitted per slide
(`macenko`), mapped onto a target's in optical-density space on the device (`transfer`)."""
