import {
  CapacityError,
  ClosedError,
  InternalError,
  isMoeA2aError,
  type MoeA2aError,
  PeerFailedError,
  PeerTimeoutError,
  RoutingError,
  ShapeError,
  sameKind,
} from '../errors.js';

/**
 * The errors a dispatch or combine can end with, built in one place so that every transport (the cpu
 * one finds them on the host, the cuda one on the device) reports the same thing in the same words.
 */

export type Phase = 'dispatch' | 'combine';

export function expertIdError(token: number, slot: number, expert: number, numExperts: number): RoutingError {
  return new RoutingError(
    `topkIdx[${token}][${slot}] = ${expert} is not an expert id: ids must be in [0, ${numExperts}) or -1 for a dropped slot`,
    { token, slot, expert },
  );
}

/** `earlierSlot`, where known, is the slot of the same token that named the expert first. */
export function duplicateExpertError(
  token: number,
  slot: number,
  expert: number,
  earlierSlot?: number,
): RoutingError {
  const slots = earlierSlot === undefined ? `slot ${slot}` : `slots ${earlierSlot} and ${slot}`;
  return new RoutingError(
    `token ${token} names expert ${expert} twice (${slots}): a token's experts must be distinct`,
    {
      token,
      slot,
      expert,
    },
  );
}

export function peerCapacityError(destination: number, count: number, limit: number): CapacityError {
  return new CapacityError(
    `destination rank ${destination} would receive ${count} rows but maxRowsPerPeer is ${limit}; ` +
      'raise maxRowsPerPeer in the group config or send fewer tokens to its experts',
    { destination, count, limit },
  );
}

export function expertCapacityError(expert: number, count: number, limit: number): CapacityError {
  return new CapacityError(
    `expert ${expert} received ${count} rows but maxRowsPerExpert is ${limit}; raise maxRowsPerExpert in the group config`,
    { expert, count, limit },
  );
}

export function tooManyTokensError(tokens: number, limit: number): ShapeError {
  return new ShapeError(
    `x has ${tokens} tokens but the group was created for at most maxTokensPerRank = ${limit}`,
    {
      argument: 'x',
      tokens,
      limit,
    },
  );
}

export function missingWeightsError(): ShapeError {
  return new ShapeError('combine needs topkWeights f32 [T, k]: pass them to dispatch or to combine', {
    argument: 'topkWeights',
  });
}

/** Dispatch of a dedup group without topkWeights: the weights travel with the tokens. */
export function dedupDispatchWeightsError(): ShapeError {
  return new ShapeError(
    'dispatch needs topkWeights f32 [T, k] with dedup: the router weights travel with the tokens',
    { argument: 'topkWeights' },
  );
}

/** combine of a dedup group given topkWeights: the owners already applied those sent with dispatch. */
export function dedupCombineWeightsError(): ShapeError {
  return new ShapeError(
    'with dedup the router weights travel with dispatch: pass topkWeights to dispatch, not to combine',
    { argument: 'topkWeights' },
  );
}

export function peerTimeoutError(
  peer: number,
  phase: Phase,
  slot: number,
  callCount: number,
  /** Between hosts: the rank that passes `peer`'s signal on (its rail peer), which may be the silent one. */
  via?: number,
): PeerTimeoutError {
  const through = via === undefined ? '' : ` through rank ${via}, which passes them on`;
  return new PeerTimeoutError(
    `rank ${peer} did not signal its ${phase} rows for call ${callCount} (slot ${slot})${through} within the timeout; ` +
      `is ${via === undefined ? 'that rank' : 'each of them'} running and making the same calls?`,
    via === undefined ? { peer, slot, callCount, phase } : { peer, slot, callCount, phase, via },
  );
}

/** A device barrier (benchmarks align ranks with one) that a rank did not reach in time. */
export function barrierTimeoutError(peer: number, count: number): PeerTimeoutError {
  return new PeerTimeoutError(
    `rank ${peer} did not reach device barrier ${count} within the timeout; is that rank running and making the same calls?`,
    { peer, callCount: count, phase: 'barrier' },
  );
}

export function peerAbortedError(peer: number, phase: Phase, callCount: number): PeerFailedError {
  return new PeerFailedError(
    `rank ${peer} abandoned ${phase} call ${callCount}: it rejected its input or failed (see that rank's error); ` +
      'the call was abandoned on every rank and the group can be used again',
    { peer, callCount, aborted: true },
  );
}

/**
 * Throws when a group cannot take another call: it was closed, or an earlier failure broke it. A peer
 * that timed out or died is reported as PeerFailedError naming it; a fault of this rank's own (the
 * driver, the device) as what it was, with the same code. The first failure is the cause.
 */
export function checkUsable(closed: boolean, broken: MoeA2aError | null): void {
  if (closed) throw new ClosedError('this group was closed; create a new one');
  if (broken) {
    const message = `this group stopped after an earlier failure (${broken.message}); close it and create a new one`;
    const peer = broken.details?.peer;
    if (typeof peer === 'number') throw new PeerFailedError(message, { peer }, { cause: broken });
    throw isMoeA2aError(broken)
      ? sameKind(broken, message, { cause: broken })
      : new InternalError(message, {}, { cause: broken });
  }
}
