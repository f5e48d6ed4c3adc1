"""The training subpackage: θ_o pretraining, normal and backdoor unlearning (NPO, RMU), value-norm alignment."""
