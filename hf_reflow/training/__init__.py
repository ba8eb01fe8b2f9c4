"""Training a k-RF stage: the teacher's couplings, the student, the Accelerate loop."""
