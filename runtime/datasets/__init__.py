"""Torch-free dataset readers: AVSBench (S4, MS3, AVSS) as the official dataloaders read it."""
