"""Examples: AS-Softmax and AS-Speed on real data sets, one script each.

Run each from the repository root as a module, e.g.
`python -m examples.fashion_mnist --quick`; see examples/README.md.
"""
