-------------------------------- MODULE Bank --------------------------------
(*
 * A toy bank for atomlua's model-based testing example (scenarios/bank), the
 * TLA+ twin of bank.qnt. Three accounts; a transfer happens only when the
 * sender's balance suffices. The variable `action` records the step taken, so
 * a reactor reads its name at "action.tag" and its arguments beside it.
 *
 *   apalache-mc simulate --length=6 --max-run=5 --save-runs \
 *     --inv=Invariant --out-dir=_apalache-out Bank.tla
 *)
EXTENDS Integers

ACCOUNTS == {"alice", "bob", "charlie"}
TOTAL == 150

VARIABLES
    \* @type: Str -> Int;
    balances,
    \* @type: { tag: Str, sender: Str, receiver: Str, amount: Int };
    action

Init ==
    /\ balances = [a \in ACCOUNTS |->
                     IF a = "alice" THEN 100 ELSE IF a = "bob" THEN 50 ELSE 0]
    /\ action = [tag |-> "init", sender |-> "", receiver |-> "", amount |-> 0]

Transfer(sender, receiver, amount) ==
    /\ sender /= receiver
    /\ amount > 0
    /\ balances[sender] >= amount
    /\ balances' = [balances EXCEPT ![sender] = @ - amount,
                                    ![receiver] = @ + amount]
    /\ action' = [tag |-> "Transfer", sender |-> sender,
                  receiver |-> receiver, amount |-> amount]

Next ==
    \E sender, receiver \in ACCOUNTS, amount \in 1..TOTAL:
        Transfer(sender, receiver, amount)

NoNegative == \A a \in ACCOUNTS: balances[a] >= 0
TotalConserved ==
    balances["alice"] + balances["bob"] + balances["charlie"] = TOTAL
Invariant == NoNegative /\ TotalConserved
=============================================================================
