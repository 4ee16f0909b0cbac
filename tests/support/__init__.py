"""What the tests share: brokers and stacks in the test process, ledger processes, clients of each
wire, generated events, fault-riding flows, and the apps and processes the tests run."""
