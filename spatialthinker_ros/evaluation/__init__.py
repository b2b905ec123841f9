"""Accuracy of a deployment on published benchmarks, next to the paper's numbers (no ROS)."""
