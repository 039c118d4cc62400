"""course_lib: the shared, tested code of *Training Neural Networks: A Hands-On Course*.

One module per topic (see the book's appendix or ``shared/DESIGN.md``):

- :mod:`course_lib.device`    device choice, seeding, determinism
- :mod:`course_lib.data`      datasets, fixed splits, normalisation, loaders
- :mod:`course_lib.models`    MLP and small CNNs
- :mod:`course_lib.train`     the training loop, evaluation, callbacks
- :mod:`course_lib.schedules` learning-rate schedules as functions of the step
- :mod:`course_lib.diagnose`  naming what is wrong with a learning curve
- :mod:`course_lib.plots`     learning curves and schedule plots
"""

__version__ = "0.1.0"
