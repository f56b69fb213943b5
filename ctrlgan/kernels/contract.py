"""The numbers of the latent contract, without torch: Philox-4x32-10 keys and round
multipliers, the uniform scale of Triton's tl.randn, truncation redraws and the slerp cut-off.

reference.py defines the contract with them; the host runtime (runtime/philox.py, the numpy
slerp) reads them from here so that a process sampling on onnxruntime never imports torch.
"""

PHILOX_ROUNDS = 10
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586
TRUNCATION_REDRAWS = 4
SLERP_EPS = 1e-3
