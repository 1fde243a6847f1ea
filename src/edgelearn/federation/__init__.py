"""Federation on Flower: sites exchange knowledge packages (records, never images or gradients).

``server_app.app`` and ``client_app.app`` are a Flower ServerApp and ClientApp (Message API).
Each round the server asks every site for its *own* knowledge (what it learned from its own data,
so nothing is counted twice), checks and merges the packages with the learners' ``merge``, and
sends the merged knowledge back; sites keep learning between rounds.
"""
