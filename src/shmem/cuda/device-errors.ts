import {
  barrierTimeoutError,
  duplicateExpertError,
  expertCapacityError,
  expertIdError,
  peerAbortedError,
  peerCapacityError,
  peerTimeoutError,
} from '../../ep/call-errors.js';
import type { EpConfig } from '../../ep/config.js';
import { InternalError, type MoeA2aError } from '../../errors.js';
import {
  EP_CAPACITY_AUX_SEND,
  EP_ERR_CAPACITY,
  EP_ERR_DUPLICATE,
  EP_ERR_EXPERT_ID,
  EP_ERR_NONE,
  EP_ERR_PEER_ABORT_COMBINE,
  EP_ERR_PEER_ABORT_DISPATCH,
  EP_ERR_TIMEOUT_BARRIER,
  EP_ERR_TIMEOUT_COMBINE,
  EP_ERR_TIMEOUT_DISPATCH,
  type EpErrorRecord,
  readEpError,
} from './args.js';

/**
 * The named error for a record the kernels wrote (EpError, kernels/ep_args.h): the same classes and
 * messages the cpu transport throws for the same fault.
 */
export function deviceError(e: EpErrorRecord, c: EpConfig): MoeA2aError {
  const call = Number(e.callCount);
  switch (e.code) {
    case EP_ERR_TIMEOUT_DISPATCH:
      return peerTimeoutError(e.peer, 'dispatch', e.slot, call);
    case EP_ERR_TIMEOUT_COMBINE:
      return peerTimeoutError(e.peer, 'combine', e.slot, call);
    case EP_ERR_CAPACITY:
      return e.aux === EP_CAPACITY_AUX_SEND
        ? peerCapacityError(Number(e.a), Number(e.b), c.maxRowsPerPeer)
        : expertCapacityError(Number(e.a), Number(e.b), c.expertCapacity);
    case EP_ERR_EXPERT_ID:
      return expertIdError(Number(e.a), Number(e.b), e.aux | 0, c.numExperts);
    case EP_ERR_DUPLICATE:
      return duplicateExpertError(Number(e.a), Number(e.b), e.aux);
    case EP_ERR_PEER_ABORT_DISPATCH:
      return peerAbortedError(e.peer, 'dispatch', call);
    case EP_ERR_PEER_ABORT_COMBINE:
      return peerAbortedError(e.peer, 'combine', call);
    case EP_ERR_TIMEOUT_BARRIER:
      return barrierTimeoutError(e.peer, call);
    default:
      return new InternalError(`a kernel reported an unknown error code ${e.code}`, { code: e.code });
  }
}

/**
 * The error the kernels left in the host-mapped error word (an EpError), with the call it is of, or
 * null; clears the word, which the device never does.
 */
export function takeDeviceError(word: Uint8Array, c: EpConfig): { error: MoeA2aError; call: number } | null {
  if (word[0] === 0 && word[1] === 0 && word[2] === 0 && word[3] === 0) return null;
  const e = readEpError(word);
  word.fill(0); // handled
  if (e.code === EP_ERR_NONE) return null;
  return { error: deviceError(e, c), call: Number(e.callCount) };
}
