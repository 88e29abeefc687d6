"""Reports: what a run, a prediction or a comparison achieved, as pages a user opens.

Owns the figures (matplotlib, from arrays), the HTML pages (``page``), the
evaluation of runs and of labelled predictions (``evaluate``), the
comparison's report (``compare``) and a settings search's (``tune``, read
from its Optuna storage). May import the ground modules (metrics
among them), ``pcam.data`` (tiles for galleries), ``pcam.models`` (Grad-CAM
of the mistakes) and ``pcam.predict`` (ensembles' out-of-fold predictions);
never training.
"""
