"""Evaluation of a trained DCGAN: discriminator features + L2-SVM (paper Tables 1-2), FID/KID, in-training FID."""
