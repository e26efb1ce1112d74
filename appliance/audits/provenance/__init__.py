"""Training-data provenance statistics: Grubbs' outlier test and TrainProVe (pure, no Flask)."""
