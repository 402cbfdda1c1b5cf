//! Contract bindings, generated from the committed ABI and bytecode in `contracts/abi/`.
#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    WorkerDispatcher,
    "contracts/abi/WorkerDispatcher.json"
);
