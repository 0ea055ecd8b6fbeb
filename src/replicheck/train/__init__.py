"""Training replicheck's learned detectors on a user's own training images: DeepSSIM
(:mod:`.deepssim`), Dar et al.'s contrastive detector (:mod:`.contrastive`), and adapting a
DeepSSIM model to a training set without training it (:mod:`.adapt`); all share :mod:`.loop`."""
