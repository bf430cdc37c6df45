"""The RL maths: masks from lengths, token log-probs, group advantages, one loss function per objective."""
