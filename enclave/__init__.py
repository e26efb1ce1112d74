"""The simulated trusted execution environment (its own OS process).

- :mod:`enclave.host` — ``EnclaveClient.launch(platform_dir=...)``: start, talk to, kill it.
- :mod:`enclave.platform` — ``create_platform(dir)``, ``platform_public_key(dir)`` (to pin).
- :mod:`enclave.measurement` — MRENCLAVE / MRSIGNER / SIGSTRUCT of the enclave package.
- :mod:`enclave.runtime`, :mod:`enclave.refine` — code that runs inside the enclave process.
- :mod:`enclave.he` — CKKS packing and ciphertext arithmetic shared by host and enclave
  (ciphertexts and their bundles, layouts, the host evaluator, the key holder).
"""
