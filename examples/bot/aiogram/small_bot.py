import asyncio
import logging
import os

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command, CommandStart
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, ErrorEvent, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

router = Router()


class Form(StatesGroup):
    name = State()
    city = State()


class Pick(CallbackData, prefix="pick"):
    item: str


@router.message(CommandStart())
async def start(message: Message) -> None:
    await message.answer(f"Hello, {message.from_user.first_name}! Try /form or /menu.")


@router.message(Command("form"))
async def form(message: Message, state: FSMContext) -> None:
    await state.set_state(Form.name)
    await message.answer("What is your name?")


@router.message(Form.name, F.text)
async def form_name(message: Message, state: FSMContext) -> None:
    await state.update_data(name=message.text)
    await state.set_state(Form.city)
    await message.answer("Which city do you live in?")


@router.message(Form.city, F.text)
async def form_city(message: Message, state: FSMContext) -> None:
    data = await state.get_data()
    await state.clear()
    await message.answer(f"{data['name']} from {message.text}: saved.")


@router.message(Command("menu"))
async def menu(message: Message) -> None:
    builder = InlineKeyboardBuilder()
    for item in ("tea", "coffee", "juice"):
        builder.button(text=item, callback_data=Pick(item=item))
    await message.answer("What would you like?", reply_markup=builder.as_markup())


@router.callback_query(Pick.filter())
async def picked(query: CallbackQuery, callback_data: Pick) -> None:
    await query.answer(f"{callback_data.item} it is")


@router.message(F.text)
async def echo(message: Message) -> None:
    await message.answer(message.text)


@router.errors()
async def on_error(event: ErrorEvent) -> None:
    logging.error("update failed: %s", event.exception)


async def main() -> None:
    dp = Dispatcher()
    dp.include_router(router)
    await dp.start_polling(Bot(os.environ["BOT_TOKEN"]))


if __name__ == "__main__":
    asyncio.run(main())
