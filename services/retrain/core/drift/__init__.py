"""Drift detection, pure: references of a training set, feature and prediction drift
(PSI with a KS test), and performance decay from late labels. No Kafka, no Ray.
"""
