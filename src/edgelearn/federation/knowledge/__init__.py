"""Sites exchange knowledge packages on Flower (records, never images or gradients).

``server_app.app`` and ``client_app.app`` are a Flower ServerApp and ClientApp (Message API); their run
config and its defaults are in ``pyproject.toml`` beside them. Each round the server asks every site
for its *own* knowledge (what it learned from its own data, so nothing is counted twice), checks and
merges the packages with :func:`edgelearn.knowledge.merge_packages`, and sends the merged knowledge
back; sites keep learning between rounds.
"""
