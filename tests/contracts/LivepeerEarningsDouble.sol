// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// Test double of Livepeer's TicketBroker, BondingManager and RoundsManager on Arbitrum One,
/// for comine's earnings tests on anvil. It emits the real events with their exact signatures
/// (so the topic hashes equal mainnet's) and answers the views comine reads; the test drives it.
/// Compiled by scripts/compile-test-contract.sh (npm solc 0.8.37); the output is committed.
contract LivepeerEarningsDouble {
    // TicketBroker
    event WinningTicketRedeemed(
        address indexed sender,
        address indexed recipient,
        uint256 faceValue,
        uint256 winProb,
        uint256 senderNonce,
        uint256 recipientRand,
        bytes auxData
    );
    event WinningTicketTransfer(address indexed sender, address indexed recipient, uint256 amount);
    // BondingManager
    event WithdrawFees(address indexed delegator, address recipient, uint256 amount);
    event EarningsClaimed(
        address indexed delegate,
        address indexed delegator,
        uint256 rewards,
        uint256 fees,
        uint256 startRound,
        uint256 endRound
    );

    uint256 public currentRound;
    mapping(address => uint256) public feeShareOf;
    mapping(address => uint256) public feesOf;
    mapping(address => uint256) public cumulativeFeesOf;

    receive() external payable {}

    function setRound(uint256 round) external {
        currentRound = round;
    }

    function setFeeShare(address transcoder, uint256 feeShare) external {
        feeShareOf[transcoder] = feeShare;
    }

    /// A winning ticket redeemed for `faceValue` of which only `amount` is credited (the
    /// sender's deposit and reserve may fall short); no transfer event when `amount` is 0.
    function redeemWinningTicket(
        address sender,
        address recipient,
        uint256 faceValue,
        uint256 winProb,
        uint256 senderNonce,
        uint256 amount
    ) external {
        emit WinningTicketRedeemed(
            sender,
            recipient,
            faceValue,
            winProb,
            senderNonce,
            uint256(keccak256(abi.encode(senderNonce))),
            abi.encodePacked(currentRound, blockhash(block.number - 1))
        );
        if (amount > 0) {
            emit WinningTicketTransfer(sender, recipient, amount);
        }
        feesOf[recipient] += amount;
        cumulativeFeesOf[recipient] += amount;
    }

    function claimEarnings(address delegate, address delegator, uint256 fees) external {
        emit EarningsClaimed(delegate, delegator, 0, fees, currentRound, currentRound);
    }

    /// Pays `amount` of `delegator`'s fees to `recipient` from this contract's balance, as an
    /// internal transfer (a call, not a transaction of its own).
    function withdrawFees(address delegator, address payable recipient, uint256 amount) external {
        require(feesOf[delegator] >= amount, "insufficient fees");
        feesOf[delegator] -= amount;
        emit WithdrawFees(delegator, recipient, amount);
        (bool ok, ) = recipient.call{value: amount}("");
        require(ok, "transfer failed");
    }

    /// A pool's payout contract: internal transfers to many recipients, no event.
    function payout(address payable[] calldata to, uint256[] calldata amounts) external payable {
        require(to.length == amounts.length, "length mismatch");
        for (uint256 i = 0; i < to.length; i++) {
            (bool ok, ) = to[i].call{value: amounts[i]}("");
            require(ok, "transfer failed");
        }
    }

    function pendingFees(address delegator, uint256) external view returns (uint256) {
        return feesOf[delegator];
    }

    /// BondingManager.getTranscoder's ten return values; feeShare in parts per million.
    function getTranscoder(address transcoder)
        external
        view
        returns (
            uint256 lastRewardRound,
            uint256 rewardCut,
            uint256 feeShare,
            uint256 lastActiveStakeUpdateRound,
            uint256 activationRound,
            uint256 deactivationRound,
            uint256 activeCumulativeRewards,
            uint256 cumulativeRewards,
            uint256 cumulativeFees,
            uint256 lastFeeRound
        )
    {
        // The other fields stay zero (named returns start at zero; a tuple literal of ten
        // values is too deep for the stack without via-IR).
        feeShare = feeShareOf[transcoder];
        cumulativeFees = cumulativeFeesOf[transcoder];
        lastFeeRound = currentRound;
    }
}
