"""The paper's analyses as library functions behind ``tools/``: feature-magnitude and
loss-weight plots (:mod:`.plots`), λ sweeps (:mod:`.sweep`), feature heatmaps
(:mod:`.heatmaps`), and train_net subprocesses with progress bars (:mod:`.launch`)."""
