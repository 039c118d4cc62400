"""course_lib: the shared, tested code of *Training Neural Networks: A Hands-On Course*.

One module per topic (see the book's appendix or ``shared/DESIGN.md``):

- :mod:`course_lib.device`    device choice, seeding, determinism
- :mod:`course_lib.data`      datasets, fixed splits, normalisation, loaders
- :mod:`course_lib.augment`   cutout, mixup, 1-D signal augmentations, v2 pipelines
- :mod:`course_lib.models`    MLP and small CNNs
- :mod:`course_lib.train`     the training loop, evaluation, callbacks
- :mod:`course_lib.schedules` learning-rate schedules as functions of the step
- :mod:`course_lib.diagnose`  naming what is wrong with a learning curve
- :mod:`course_lib.monitor`   gradient norms, update ratios, NaN finder, clipping
- :mod:`course_lib.hparam`    grid, random and coarse-to-fine search, LR range test
- :mod:`course_lib.sanity`    set-up checks: initial loss, labels, shapes, leaks
- :mod:`course_lib.optim`     SGD, Adagrad, RMSprop, Adam(W), NAdam, RAdam, Lookahead
- :mod:`course_lib.init`      Xavier and Kaiming init, activation/gradient statistics
- :mod:`course_lib.norm`      batch, layer, group, instance and weight normalisation
- :mod:`course_lib.regularize` dropout, label smoothing, penalties, stochastic depth
- :mod:`course_lib.ensemble`  averaged probabilities, snapshots, EMA/SWA, update_bn, TTA
- :mod:`course_lib.distill`   Hinton et al.'s distillation loss, teachers, students
- :mod:`course_lib.transfer`  linear probes, fine-tuning groups, source nets, ResNet-18
- :mod:`course_lib.generalization` random labels/inputs, random features
- :mod:`course_lib.pruning`   magnitude masks, rewinding, iterative magnitude pruning
- :mod:`course_lib.landscapes` 2-D loss surfaces, optimizer paths, Newton's step
- :mod:`course_lib.parallel`  DDP launcher and torchrun entry, gradient averaging
- :mod:`course_lib.plots`     learning curves, schedules, landscapes
- :mod:`course_lib.notebook`  conventions every notebook follows (the Colab cell)
- :mod:`course_lib.labs`      lab checks, student-notebook generation, grading
"""

__version__ = "0.1.0"
